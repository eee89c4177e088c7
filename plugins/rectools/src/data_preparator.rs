//! Data preparators: ports the collate functions of RecTools' `SASRecDataPreparator`
//! (`rectools/models/nn/transformers/sasrec.py`) and `BERT4RecDataPreparator` (`bert4rec.py`),
//! with the kwargs of `TransformerDataPreparatorBase` (`data_preparator.py`); reference §1.2 and
//! §2.6.
//!
//! Sessions arrive as internal item ids (PAD = 0, MASK = 1 for BERT4Rec, then real items), oldest
//! first. Every batch is left-padded with PAD and right-truncated to `session_max_len` (L):
//!
//! - SASRec trains next-item prediction: inputs `s[:-1]`, targets `s[1:]` (a session keeps its last
//!   L + 1 items).
//! - BERT4Rec trains masked-item prediction with the 80/10/10 rule inside `mask_prob`, and appends
//!   MASK to the input at validation and recommendation.
//!
//! Random draws (BERT4Rec masking, then negatives) come from the model's [`SharedRng`], in batch
//! order: one uniform draw per position, plus one item draw right after it for positions that get a
//! random item. RecTools draws from numpy/torch, so only the distributions match, not the values.

use rand::Rng;
use recblocks_core::{
    batch::Batch,
    candle::{Device, Tensor},
    components::{DataPreparator, NegativeSampler, SessionRef},
    context::SharedRng,
    error::CoreError,
    inventory,
    kind::ComponentKind,
    kwargs::{decode_kwargs, default_kwargs_json},
    registry::{ComponentInfo, DataPreparatorRegistration},
    serde_json::Value,
    spec::ModelSpec,
    Result,
};
use serde::{Deserialize, Serialize};

use crate::CRATE;

/// Internal id of the PAD token.
pub const PAD_ID: u32 = 0;
/// Internal id of the MASK token (BERT4Rec only).
pub const MASK_ID: u32 = 1;
/// RecTools' default `mask_prob` (used when the spec has none).
pub const DEFAULT_MASK_PROB: f64 = 0.15;

const SASREC: &str = "SASRecDataPreparator";
const BERT4REC: &str = "BERT4RecDataPreparator";

/// Kwargs of both data preparators (`data_preparator_kwargs`): RecTools'
/// `TransformerDataPreparatorBase` keyword arguments that a spec may set.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DataPreparatorKwargs {
    /// Whether training batches are drawn in shuffled order (default `true`).
    pub shuffle_train: bool,
    /// RecTools' extra interaction columns passed into batches. Not supported: must be null (or
    /// an empty list).
    pub extra_cols: Option<Value>,
    /// RecTools' `unix_ts` batch key. Not supported: must be `false`.
    pub add_unix_ts: bool,
}

impl Default for DataPreparatorKwargs {
    fn default() -> Self {
        DataPreparatorKwargs {
            shuffle_train: true,
            extra_cols: None,
            add_unix_ts: false,
        }
    }
}

impl DataPreparatorKwargs {
    /// Decodes and checks kwargs for the preparator `component`.
    pub fn decode(component: &str, kwargs: &Value) -> Result<Self> {
        let kw: Self = decode_kwargs(ComponentKind::DataPreparator, component, kwargs)?;
        match &kw.extra_cols {
            None => {}
            Some(Value::Array(a)) if a.is_empty() => {}
            Some(other) => {
                return Err(CoreError::BadKwargs {
                    kind: ComponentKind::DataPreparator,
                    component: component.to_string(),
                    message: format!(
                        "`extra_cols` must be null: recblocks batches carry only x, y, yw and \
                         negatives (extra interaction columns are not supported); found {other}"
                    ),
                })
            }
        }
        if kw.add_unix_ts {
            return Err(CoreError::BadKwargs {
                kind: ComponentKind::DataPreparator,
                component: component.to_string(),
                message: "`add_unix_ts` must be false: recblocks batches carry no `unix_ts` key \
                          (no recblocks component reads timestamps)"
                    .into(),
            });
        }
        Ok(kw)
    }
}

/// SASRec's data preparator: PAD only, next-item targets, sessions of L + 1 items in training.
#[derive(Debug, Clone)]
pub struct SASRecDataPreparator {
    session_max_len: usize,
    shuffle_train: bool,
}

impl SASRecDataPreparator {
    /// A preparator for sessions of at most `session_max_len` inputs.
    pub fn new(session_max_len: usize, shuffle_train: bool) -> Self {
        SASRecDataPreparator {
            session_max_len,
            shuffle_train,
        }
    }

    /// Builds from the spec (`session_max_len`) and `data_preparator_kwargs`.
    pub fn from_spec(spec: &ModelSpec, kwargs: &Value) -> Result<Self> {
        let kw = DataPreparatorKwargs::decode(SASREC, kwargs)?;
        check_max_len(SASREC, spec.session_max_len)?;
        Ok(Self::new(spec.session_max_len, kw.shuffle_train))
    }

    /// Maximum session length L.
    pub fn session_max_len(&self) -> usize {
        self.session_max_len
    }
}

/// BERT4Rec's data preparator: PAD and MASK, masked-item targets.
#[derive(Debug, Clone)]
pub struct BERT4RecDataPreparator {
    session_max_len: usize,
    shuffle_train: bool,
    mask_prob: f64,
}

impl BERT4RecDataPreparator {
    /// A preparator for sessions of at most `session_max_len` items, masking each training position
    /// with probability `mask_prob`.
    pub fn new(session_max_len: usize, mask_prob: f64, shuffle_train: bool) -> Self {
        BERT4RecDataPreparator {
            session_max_len,
            shuffle_train,
            mask_prob,
        }
    }

    /// Builds from the spec (`session_max_len`, `mask_prob`, default 0.15) and
    /// `data_preparator_kwargs`.
    pub fn from_spec(spec: &ModelSpec, kwargs: &Value) -> Result<Self> {
        let kw = DataPreparatorKwargs::decode(BERT4REC, kwargs)?;
        check_max_len(BERT4REC, spec.session_max_len)?;
        let mask_prob = spec.mask_prob.unwrap_or(DEFAULT_MASK_PROB);
        if !(0.0..=1.0).contains(&mask_prob) {
            return Err(CoreError::invalid(
                ComponentKind::DataPreparator,
                BERT4REC,
                format!("mask_prob must be in [0, 1], found {mask_prob}"),
            ));
        }
        Ok(Self::new(spec.session_max_len, mask_prob, kw.shuffle_train))
    }

    /// Maximum session length L.
    pub fn session_max_len(&self) -> usize {
        self.session_max_len
    }

    /// The masking probability.
    pub fn mask_prob(&self) -> f64 {
        self.mask_prob
    }

    /// Masks one session (RecTools `_mask_session`): returns the model input and the targets.
    ///
    /// For each position a draw `p ~ U[0, 1)`: if `p < mask_prob`, `p /= mask_prob` and the input
    /// becomes MASK (`p < 0.8`), a uniformly random real item in `[2, n_items)` (`p < 0.9`), or
    /// stays unchanged; the target is the original item. Otherwise the target is 0 (ignored).
    pub fn mask_session<R: Rng + ?Sized>(
        &self,
        items: &[u32],
        n_items: usize,
        rng: &mut R,
    ) -> (Vec<u32>, Vec<u32>) {
        let lowest = BERT4REC_EXTRA_TOKENS.len() as u32;
        let highest = n_items as u32;
        let mut masked = Vec::with_capacity(items.len());
        let mut target = Vec::with_capacity(items.len());
        for &item in items {
            let mut p: f64 = rng.random();
            if p < self.mask_prob {
                p /= self.mask_prob;
                let input = if p < 0.8 {
                    MASK_ID
                } else if p < 0.9 && lowest < highest {
                    rng.random_range(lowest..highest)
                } else {
                    item
                };
                masked.push(input);
                target.push(item);
            } else {
                masked.push(item);
                target.push(PAD_ID);
            }
        }
        (masked, target)
    }
}

const SASREC_EXTRA_TOKENS: [&str; 1] = ["PAD"];
const BERT4REC_EXTRA_TOKENS: [&str; 2] = ["PAD", "MASK"];

fn check_max_len(component: &str, l: usize) -> Result<()> {
    if l == 0 {
        return Err(CoreError::invalid(
            ComponentKind::DataPreparator,
            component,
            "session_max_len must be at least 1",
        ));
    }
    Ok(())
}

/// Checks a session's shape and ids against the catalog.
fn check_session(component: &str, i: usize, s: &SessionRef<'_>, n_items: usize) -> Result<()> {
    if s.items.len() != s.weights.len() {
        return Err(CoreError::invalid(
            ComponentKind::DataPreparator,
            component,
            format!(
                "session {i} has {} items but {} weights",
                s.items.len(),
                s.weights.len()
            ),
        ));
    }
    if let Some(bad) = s.items.iter().find(|&&it| it as usize >= n_items) {
        return Err(CoreError::invalid(
            ComponentKind::DataPreparator,
            component,
            format!("session {i} holds item id {bad}, but the catalog has only {n_items} ids"),
        ));
    }
    Ok(())
}

/// Writes `src` right-aligned into the row `row` (length `l`) of `dst`; `src.len() <= l`.
fn put_right<T: Copy>(dst: &mut [T], row: usize, l: usize, src: &[T]) {
    let end = (row + 1) * l;
    dst[end - src.len()..end].copy_from_slice(src);
}

/// The last `l` elements of `s`.
fn last<T>(s: &[T], l: usize) -> &[T] {
    &s[s.len().saturating_sub(l)..]
}

/// Draws negatives `[b, seq_len, K]` with ids in `[n_extra, n_items)` when a sampler is given.
#[allow(clippy::too_many_arguments)]
fn draw_negatives(
    component: &str,
    sampler: Option<&dyn NegativeSampler>,
    b: usize,
    seq_len: usize,
    n_extra: usize,
    n_items: usize,
    rng: &SharedRng,
    device: &Device,
) -> Result<Option<Tensor>> {
    let Some(sampler) = sampler else {
        return Ok(None);
    };
    if n_items <= n_extra {
        return Err(CoreError::invalid(
            ComponentKind::DataPreparator,
            component,
            format!(
                "cannot sample negatives: the catalog has {n_items} ids of which {n_extra} are \
                 extra tokens, so there is no real item"
            ),
        ));
    }
    let k = sampler.n_negatives();
    let negs = sampler.sample(b, seq_len, n_extra as u32, n_items as u32, rng);
    if negs.len() != b * seq_len * k {
        return Err(CoreError::invalid(
            ComponentKind::DataPreparator,
            component,
            format!(
                "the negative sampler returned {} ids, expected {b} x {seq_len} x {k} = {}",
                negs.len(),
                b * seq_len * k
            ),
        ));
    }
    Ok(Some(Tensor::from_vec(negs, (b, seq_len, k), device)?))
}

/// Builds `x`, `y`, `yw` tensors.
fn tensors(
    x: Vec<u32>,
    y: Vec<u32>,
    yw: Vec<f32>,
    b: usize,
    l_x: usize,
    l_y: usize,
    device: &Device,
) -> Result<(Tensor, Tensor, Tensor)> {
    Ok((
        Tensor::from_vec(x, (b, l_x), device)?,
        Tensor::from_vec(y, (b, l_y), device)?,
        Tensor::from_vec(yw, (b, l_y), device)?,
    ))
}

/// The validation collate shared by both preparators: the input is the weight-0 items, the target
/// the first item with a non-zero weight; `append_mask` adds MASK after the input (BERT4Rec).
#[allow(clippy::too_many_arguments)]
fn collate_val_common(
    component: &str,
    l: usize,
    n_extra: usize,
    append_mask: bool,
    sessions: &[SessionRef<'_>],
    n_items: usize,
    sampler: Option<&dyn NegativeSampler>,
    rng: &SharedRng,
    device: &Device,
) -> Result<Batch> {
    let b = sessions.len();
    let mut x = vec![PAD_ID; b * l];
    let mut y = vec![PAD_ID; b];
    let mut yw = vec![0f32; b];
    for (i, s) in sessions.iter().enumerate() {
        check_session(component, i, s, n_items)?;
        let Some(t) = s.weights.iter().position(|&w| w != 0.0) else {
            return Err(CoreError::invalid(
                ComponentKind::DataPreparator,
                component,
                format!(
                    "validation session {i} has no target: every weight is 0 (the target is the \
                     first item with a non-zero weight)"
                ),
            ));
        };
        let mut input: Vec<u32> = s
            .items
            .iter()
            .zip(s.weights)
            .filter(|(_, &w)| w == 0.0)
            .map(|(&it, _)| it)
            .collect();
        if append_mask {
            input.push(MASK_ID);
        }
        put_right(&mut x, i, l, last(&input, l));
        y[i] = s.items[t];
        yw[i] = s.weights[t];
    }
    let (x, y, yw) = tensors(x, y, yw, b, l, 1, device)?;
    let negatives = draw_negatives(component, sampler, b, 1, n_extra, n_items, rng, device)?;
    Ok(Batch {
        x,
        y,
        yw,
        negatives,
    })
}

impl DataPreparator for SASRecDataPreparator {
    fn item_extra_tokens(&self) -> Vec<String> {
        SASREC_EXTRA_TOKENS.iter().map(|s| s.to_string()).collect()
    }

    fn train_session_max_len_addition(&self) -> usize {
        1
    }

    fn shuffle_train(&self) -> bool {
        self.shuffle_train
    }

    /// `x[-(n-1):] = s[:-1]`, `y[-(n-1):] = s[1:]`, `yw[-(n-1):] = w[1:]` over the last L + 1
    /// items `s` of each session.
    fn collate_train(
        &self,
        sessions: &[SessionRef<'_>],
        n_items: usize,
        sampler: Option<&dyn NegativeSampler>,
        rng: &SharedRng,
        device: &Device,
    ) -> Result<Batch> {
        let l = self.session_max_len;
        let b = sessions.len();
        let mut x = vec![PAD_ID; b * l];
        let mut y = vec![PAD_ID; b * l];
        let mut yw = vec![0f32; b * l];
        for (i, s) in sessions.iter().enumerate() {
            check_session(SASREC, i, s, n_items)?;
            let items = last(s.items, l + 1);
            let weights = last(s.weights, l + 1);
            if items.len() < 2 {
                continue;
            }
            let m = items.len() - 1;
            put_right(&mut x, i, l, &items[..m]);
            put_right(&mut y, i, l, &items[1..]);
            put_right(&mut yw, i, l, &weights[1..]);
        }
        let (x, y, yw) = tensors(x, y, yw, b, l, l, device)?;
        let negatives = draw_negatives(
            SASREC,
            sampler,
            b,
            l,
            SASREC_EXTRA_TOKENS.len(),
            n_items,
            rng,
            device,
        )?;
        Ok(Batch {
            x,
            y,
            yw,
            negatives,
        })
    }

    /// `x[-len(inp):] = inp[-L:]`; `y`, `yw` `[B, 1]`; negatives `[B, 1, K]`.
    fn collate_val(
        &self,
        sessions: &[SessionRef<'_>],
        n_items: usize,
        sampler: Option<&dyn NegativeSampler>,
        rng: &SharedRng,
        device: &Device,
    ) -> Result<Batch> {
        collate_val_common(
            SASREC,
            self.session_max_len,
            SASREC_EXTRA_TOKENS.len(),
            false,
            sessions,
            n_items,
            sampler,
            rng,
            device,
        )
    }

    /// `x[-len(s):] = s[-L:]`.
    fn collate_recommend(&self, sessions: &[&[u32]], device: &Device) -> Result<Tensor> {
        let l = self.session_max_len;
        let mut x = vec![PAD_ID; sessions.len() * l];
        for (i, s) in sessions.iter().enumerate() {
            put_right(&mut x, i, l, last(s, l));
        }
        Ok(Tensor::from_vec(x, (sessions.len(), l), device)?)
    }
}

impl DataPreparator for BERT4RecDataPreparator {
    fn item_extra_tokens(&self) -> Vec<String> {
        BERT4REC_EXTRA_TOKENS
            .iter()
            .map(|s| s.to_string())
            .collect()
    }

    fn train_session_max_len_addition(&self) -> usize {
        0
    }

    fn shuffle_train(&self) -> bool {
        self.shuffle_train
    }

    /// Masks the last L items `s` of each session: `x[-n:] = masked`, `y[-n:] = target`,
    /// `yw[-n:] = w`.
    fn collate_train(
        &self,
        sessions: &[SessionRef<'_>],
        n_items: usize,
        sampler: Option<&dyn NegativeSampler>,
        rng: &SharedRng,
        device: &Device,
    ) -> Result<Batch> {
        let n_extra = BERT4REC_EXTRA_TOKENS.len();
        if n_items <= n_extra {
            return Err(CoreError::invalid(
                ComponentKind::DataPreparator,
                BERT4REC,
                format!(
                    "the catalog has {n_items} ids of which {n_extra} are extra tokens (PAD, \
                     MASK): there is no real item to train on"
                ),
            ));
        }
        let l = self.session_max_len;
        let b = sessions.len();
        let mut x = vec![PAD_ID; b * l];
        let mut y = vec![PAD_ID; b * l];
        let mut yw = vec![0f32; b * l];
        {
            let mut g = rng.lock();
            for (i, s) in sessions.iter().enumerate() {
                check_session(BERT4REC, i, s, n_items)?;
                let items = last(s.items, l);
                let weights = last(s.weights, l);
                let (masked, target) = self.mask_session(items, n_items, &mut *g);
                put_right(&mut x, i, l, &masked);
                put_right(&mut y, i, l, &target);
                put_right(&mut yw, i, l, weights);
            }
        }
        let (x, y, yw) = tensors(x, y, yw, b, l, l, device)?;
        let negatives = draw_negatives(BERT4REC, sampler, b, l, n_extra, n_items, rng, device)?;
        Ok(Batch {
            x,
            y,
            yw,
            negatives,
        })
    }

    /// `x[-(len(inp)+1):] = (inp + [MASK])[-L:]`; `y`, `yw` `[B, 1]`; negatives `[B, 1, K]`.
    fn collate_val(
        &self,
        sessions: &[SessionRef<'_>],
        n_items: usize,
        sampler: Option<&dyn NegativeSampler>,
        rng: &SharedRng,
        device: &Device,
    ) -> Result<Batch> {
        collate_val_common(
            BERT4REC,
            self.session_max_len,
            BERT4REC_EXTRA_TOKENS.len(),
            true,
            sessions,
            n_items,
            sampler,
            rng,
            device,
        )
    }

    /// `x = (s + [MASK])[-L:]`, left-padded: at most L − 1 real items and the MASK.
    fn collate_recommend(&self, sessions: &[&[u32]], device: &Device) -> Result<Tensor> {
        let l = self.session_max_len;
        let mut x = vec![PAD_ID; sessions.len() * l];
        let mut buf = Vec::with_capacity(l);
        for (i, s) in sessions.iter().enumerate() {
            buf.clear();
            buf.extend_from_slice(last(s, l.saturating_sub(1)));
            buf.push(MASK_ID);
            put_right(&mut x, i, l, last(&buf, l));
        }
        Ok(Tensor::from_vec(x, (sessions.len(), l), device)?)
    }
}

fn build_sasrec(spec: &ModelSpec, kwargs: &Value) -> Result<Box<dyn DataPreparator>> {
    Ok(Box::new(SASRecDataPreparator::from_spec(spec, kwargs)?))
}

fn build_bert4rec(spec: &ModelSpec, kwargs: &Value) -> Result<Box<dyn DataPreparator>> {
    Ok(Box::new(BERT4RecDataPreparator::from_spec(spec, kwargs)?))
}

inventory::submit! {
    DataPreparatorRegistration {
        info: ComponentInfo {
            name: SASREC,
            aliases: &["rectools.models.nn.transformers.sasrec.SASRecDataPreparator"],
            summary: "SASRec batches: left-padded sessions, next-item targets (inputs s[:-1], targets s[1:])",
            crate_name: CRATE,
            default_kwargs: default_kwargs_json::<DataPreparatorKwargs>,
        },
        build: build_sasrec,
    }
}

inventory::submit! {
    DataPreparatorRegistration {
        info: ComponentInfo {
            name: BERT4REC,
            aliases: &["rectools.models.nn.transformers.bert4rec.BERT4RecDataPreparator"],
            summary: "BERT4Rec batches: left-padded sessions with masked-item targets (80/10/10 within mask_prob), MASK appended at inference",
            crate_name: CRATE,
            default_kwargs: default_kwargs_json::<DataPreparatorKwargs>,
        },
        build: build_bert4rec,
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use std::sync::Mutex;

    use recblocks_core::serde_json::{json, Map};

    use super::*;

    fn spec(base: Map<String, Value>, overrides: Value) -> ModelSpec {
        let mut m = base;
        if let Value::Object(o) = overrides {
            m.extend(o);
        }
        serde_json::from_value(Value::Object(m)).expect("spec")
    }

    fn sasrec(l: usize) -> SASRecDataPreparator {
        let s = spec(
            crate::presets::sasrec_defaults(),
            json!({"session_max_len": l}),
        );
        SASRecDataPreparator::from_spec(&s, &Value::Null).expect("build")
    }

    fn bert(l: usize, mask_prob: f64) -> BERT4RecDataPreparator {
        let s = spec(
            crate::presets::bert4rec_defaults(),
            json!({"session_max_len": l, "mask_prob": mask_prob}),
        );
        BERT4RecDataPreparator::from_spec(&s, &Value::Null).expect("build")
    }

    fn u32s(t: &Tensor) -> Vec<Vec<u32>> {
        t.to_vec2::<u32>().expect("u32 2d")
    }

    fn f32s(t: &Tensor) -> Vec<Vec<f32>> {
        t.to_vec2::<f32>().expect("f32 2d")
    }

    /// Returns `lowest, lowest+1, ...` cyclically and records its arguments.
    struct CountingSampler {
        k: usize,
        calls: Mutex<Vec<(usize, usize, u32, u32)>>,
    }

    impl NegativeSampler for CountingSampler {
        fn sample(
            &self,
            batch: usize,
            seq_len: usize,
            lowest_id: u32,
            highest_id: u32,
            _rng: &SharedRng,
        ) -> Vec<u32> {
            self.calls
                .lock()
                .expect("lock")
                .push((batch, seq_len, lowest_id, highest_id));
            (0..batch * seq_len * self.k)
                .map(|i| lowest_id + (i as u32) % (highest_id - lowest_id))
                .collect()
        }
        fn n_negatives(&self) -> usize {
            self.k
        }
    }

    // RecTools tests/models/nn/transformers/test_sasrec.py `TestSASRecDataPreparator` (reference
    // §2.6), L = 3. Interactions (user, item, weight, date): (10,13,1,11-30), (10,11,1,11-29),
    // (10,12,1,11-29), (30,11,1,11-27), (30,12,2,11-26), (30,15,1,11-25), (40,11,1,11-25),
    // (40,17,1,11-26), (50,16,1,11-25), (10,14,1,11-28), (10,16,1,11-27), (20,13,9,11-28).
    // Users 50 and 20 have one interaction (< train_min_user_interactions = 2) and are dropped;
    // each user keeps its last L + 1 = 4 rows (user 10 loses item 16). Stable time order gives the
    // item map PAD=0, 15=1, 11=2, 12=3, 17=4, 14=5, 13=6, and the sessions
    // user 10: [14, 11, 12, 13] = [5, 2, 3, 6], weights [1, 1, 1, 1];
    // user 30: [15, 12, 11] = [1, 3, 2], weights [1, 2, 1];
    // user 40: [11, 17] = [2, 4], weights [1, 1].
    // RecTools' expected batch lists the users in the order 10, 30, 40.
    #[test]
    fn sasrec_train_matches_rectools_test_vector() {
        let p = sasrec(3);
        let (s10, w10) = ([5u32, 2, 3, 6], [1f32, 1., 1., 1.]);
        let (s30, w30) = ([1u32, 3, 2], [1f32, 2., 1.]);
        let (s40, w40) = ([2u32, 4], [1f32, 1.]);
        let sessions = [
            SessionRef {
                items: &s10,
                weights: &w10,
            },
            SessionRef {
                items: &s30,
                weights: &w30,
            },
            SessionRef {
                items: &s40,
                weights: &w40,
            },
        ];
        let rng = SharedRng::new(0);
        let b = p
            .collate_train(&sessions, 7, None, &rng, &Device::Cpu)
            .expect("collate");
        assert_eq!(
            u32s(&b.x),
            vec![vec![5, 2, 3], vec![0, 1, 3], vec![0, 0, 2]]
        );
        assert_eq!(
            u32s(&b.y),
            vec![vec![2, 3, 6], vec![0, 3, 2], vec![0, 0, 4]]
        );
        assert_eq!(
            f32s(&b.yw),
            vec![vec![1., 1., 1.], vec![0., 2., 1.], vec![0., 0., 1.]]
        );
        assert!(b.negatives.is_none());
        assert_eq!(p.item_extra_tokens(), vec!["PAD".to_string()]);
        assert_eq!(p.train_session_max_len_addition(), 1);
        assert!(p.shuffle_train());
    }

    // Same section, with val users [10, 30]: the item map becomes PAD, 15, 11, 12, 17, 16, 14;
    // user 30's validation session is its train items [15, 12] = [1, 3] at weight 0 followed by its
    // held-out item 11 = 2 at weight 1 (user 10's target, item 13, is unknown and dropped).
    #[test]
    fn sasrec_val_matches_rectools_test_vector() {
        let p = sasrec(3);
        let (s30, w30) = ([1u32, 3, 2], [0f32, 0., 1.]);
        let sessions = [SessionRef {
            items: &s30,
            weights: &w30,
        }];
        let sampler = CountingSampler {
            k: 2,
            calls: Mutex::new(vec![]),
        };
        let b = p
            .collate_val(
                &sessions,
                7,
                Some(&sampler),
                &SharedRng::new(0),
                &Device::Cpu,
            )
            .expect("collate");
        assert_eq!(u32s(&b.x), vec![vec![0, 1, 3]]);
        assert_eq!(u32s(&b.y), vec![vec![2]]);
        assert_eq!(f32s(&b.yw), vec![vec![1.]]);
        let negs = b.negatives.expect("negatives");
        assert_eq!(negs.dims(), &[1, 1, 2]);
        assert_eq!(*sampler.calls.lock().expect("lock"), vec![(1, 1, 1, 7)]);
    }

    #[test]
    fn sasrec_train_keeps_last_l_plus_one_items_and_samples_negatives() {
        let p = sasrec(3);
        // 6 items: the last L + 1 = 4 are kept: [3, 4, 5, 6].
        let s = [1u32, 2, 3, 4, 5, 6];
        let w = [1f32, 2., 3., 4., 5., 6.];
        let single = [4u32];
        let single_w = [1f32];
        let sessions = [
            SessionRef {
                items: &s,
                weights: &w,
            },
            SessionRef {
                items: &single,
                weights: &single_w,
            },
        ];
        let sampler = CountingSampler {
            k: 3,
            calls: Mutex::new(vec![]),
        };
        let b = p
            .collate_train(
                &sessions,
                8,
                Some(&sampler),
                &SharedRng::new(0),
                &Device::Cpu,
            )
            .expect("collate");
        assert_eq!(u32s(&b.x), vec![vec![3, 4, 5], vec![0, 0, 0]]);
        assert_eq!(u32s(&b.y), vec![vec![4, 5, 6], vec![0, 0, 0]]);
        assert_eq!(f32s(&b.yw), vec![vec![4., 5., 6.], vec![0., 0., 0.]]);
        let negs = b.negatives.expect("negatives");
        assert_eq!(negs.dims(), &[2, 3, 3]);
        assert_eq!(*sampler.calls.lock().expect("lock"), vec![(2, 3, 1, 8)]);
        assert!(negs
            .flatten_all()
            .and_then(|t| t.to_vec1::<u32>())
            .expect("vec")
            .iter()
            .all(|&v| (1..8).contains(&v)));
    }

    #[test]
    fn sasrec_val_and_recommend_truncate_to_l() {
        let p = sasrec(3);
        // Inputs are the weight-0 items; the target is the first non-zero-weight item.
        let s = [1u32, 2, 3, 4, 5, 6];
        let w = [0f32, 0., 0., 0., 2.5, 1.];
        let b = p
            .collate_val(
                &[SessionRef {
                    items: &s,
                    weights: &w,
                }],
                7,
                None,
                &SharedRng::new(0),
                &Device::Cpu,
            )
            .expect("collate");
        assert_eq!(u32s(&b.x), vec![vec![2, 3, 4]]);
        assert_eq!(u32s(&b.y), vec![vec![5]]);
        assert_eq!(f32s(&b.yw), vec![vec![2.5]]);
        assert!(b.negatives.is_none());

        let long = [1u32, 2, 3, 4, 5];
        let short = [6u32];
        let x = p
            .collate_recommend(&[&long, &short, &[]], &Device::Cpu)
            .expect("recommend");
        assert_eq!(u32s(&x), vec![vec![3, 4, 5], vec![0, 0, 6], vec![0, 0, 0]]);
    }

    #[test]
    fn val_without_target_and_bad_ids_are_errors() {
        let p = sasrec(3);
        let s = [1u32, 2];
        let w = [0f32, 0.];
        let err = p
            .collate_val(
                &[SessionRef {
                    items: &s,
                    weights: &w,
                }],
                7,
                None,
                &SharedRng::new(0),
                &Device::Cpu,
            )
            .expect_err("no target");
        assert!(err.to_string().contains("no target"), "{err}");
        let s = [1u32, 9];
        let w = [1f32, 1.];
        let err = p
            .collate_train(
                &[SessionRef {
                    items: &s,
                    weights: &w,
                }],
                7,
                None,
                &SharedRng::new(0),
                &Device::Cpu,
            )
            .expect_err("bad id");
        assert!(err.to_string().contains("item id 9"), "{err}");
        let w = [1f32];
        let err = p
            .collate_train(
                &[SessionRef {
                    items: &s,
                    weights: &w,
                }],
                10,
                None,
                &SharedRng::new(0),
                &Device::Cpu,
            )
            .expect_err("length mismatch");
        assert!(err.to_string().contains("2 items but 1 weights"), "{err}");
    }

    #[test]
    fn kwargs_defaults_and_rejections() {
        assert_eq!(
            default_kwargs_json::<DataPreparatorKwargs>(),
            json!({"shuffle_train": true, "extra_cols": null, "add_unix_ts": false})
        );
        let s = spec(crate::presets::sasrec_defaults(), json!({}));
        let p =
            SASRecDataPreparator::from_spec(&s, &json!({"shuffle_train": false})).expect("build");
        assert!(!p.shuffle_train());
        assert!(SASRecDataPreparator::from_spec(
            &s,
            &json!({"extra_cols": null, "add_unix_ts": false})
        )
        .is_ok());
        let err = SASRecDataPreparator::from_spec(&s, &json!({"extra_cols": ["price"]}))
            .expect_err("extra_cols");
        assert!(err.to_string().contains("extra_cols"), "{err}");
        let err = SASRecDataPreparator::from_spec(&s, &json!({"add_unix_ts": true}))
            .expect_err("unix ts");
        assert!(err.to_string().contains("add_unix_ts"), "{err}");
        let err = SASRecDataPreparator::from_spec(&s, &json!({"mask_prob": 0.2}))
            .expect_err("unknown field");
        assert!(err.to_string().contains("mask_prob"), "{err}");
        // BERT4Rec reads mask_prob from the spec, default 0.15.
        let mut b = spec(crate::presets::bert4rec_defaults(), json!({}));
        b.mask_prob = None;
        let p = BERT4RecDataPreparator::from_spec(&b, &Value::Null).expect("build");
        assert_eq!(p.mask_prob(), 0.15);
        assert_eq!(
            p.item_extra_tokens(),
            vec!["PAD".to_string(), "MASK".to_string()]
        );
        assert_eq!(p.train_session_max_len_addition(), 0);
    }

    #[test]
    fn bert4rec_masking_statistics() {
        let mask_prob = 0.5;
        let p = bert(50, mask_prob);
        let n_items = 1002; // 1000 real items: a random item rarely equals the original.
        let rng = SharedRng::new(7);
        let sessions: Vec<(Vec<u32>, Vec<f32>)> = (0..400)
            .map(|u| {
                let n = 10 + u % 41;
                let items = (0..n)
                    .map(|j| 2 + ((u * 31 + j * 7) % 1000) as u32)
                    .collect();
                (items, vec![1.5f32; n])
            })
            .collect();
        let refs: Vec<SessionRef<'_>> = sessions
            .iter()
            .map(|(i, w)| SessionRef {
                items: i,
                weights: w,
            })
            .collect();
        let b = p
            .collate_train(&refs, n_items, None, &rng, &Device::Cpu)
            .expect("collate");
        let (x, y, yw) = (u32s(&b.x), u32s(&b.y), f32s(&b.yw));
        let (mut total, mut masked, mut to_mask, mut to_random, mut unchanged) = (0, 0, 0, 0, 0);
        for (i, (items, _)) in sessions.iter().enumerate() {
            let pad = 50 - items.len();
            for j in 0..pad {
                assert_eq!((x[i][j], y[i][j], yw[i][j]), (0, 0, 0.0));
            }
            for (j, &orig) in items.iter().enumerate() {
                let (xi, yi) = (x[i][pad + j], y[i][pad + j]);
                assert_eq!(yw[i][pad + j], 1.5);
                total += 1;
                if yi == 0 {
                    // Not masked: input unchanged, target ignored.
                    assert_eq!(xi, orig);
                    continue;
                }
                assert_eq!(yi, orig);
                masked += 1;
                if xi == MASK_ID {
                    to_mask += 1;
                } else if xi == orig {
                    unchanged += 1;
                } else {
                    assert!((2..n_items as u32).contains(&xi), "random item {xi}");
                    to_random += 1;
                }
            }
        }
        let frac = masked as f64 / total as f64;
        assert!((frac - mask_prob).abs() < 0.02, "masked fraction {frac}");
        let m = masked as f64;
        let (fm, fr, fu) = (
            to_mask as f64 / m,
            to_random as f64 / m,
            unchanged as f64 / m,
        );
        assert!((fm - 0.8).abs() < 0.02, "MASK fraction {fm}");
        assert!((fr - 0.1).abs() < 0.015, "random fraction {fr}");
        assert!((fu - 0.1).abs() < 0.015, "unchanged fraction {fu}");

        // Same seed, same batch.
        let again = p
            .collate_train(&refs, n_items, None, &SharedRng::new(7), &Device::Cpu)
            .expect("collate");
        assert_eq!(u32s(&again.x), x);
        assert_eq!(u32s(&again.y), y);
    }

    #[test]
    fn bert4rec_random_items_are_never_extra_tokens() {
        // mask_prob 1: every position is masked; with one real item (id 2) every random
        // replacement must be 2, never PAD or MASK sampled as an item.
        let p = bert(20, 1.0);
        let items = vec![2u32; 20];
        let w = vec![1f32; 20];
        let refs = vec![
            SessionRef {
                items: &items,
                weights: &w
            };
            200
        ];
        let b = p
            .collate_train(&refs, 3, None, &SharedRng::new(3), &Device::Cpu)
            .expect("collate");
        let x = u32s(&b.x);
        assert!(x.iter().flatten().all(|&v| v == MASK_ID || v == 2));
        assert!(x.iter().flatten().any(|&v| v == 2));
        assert!(u32s(&b.y).iter().flatten().all(|&v| v == 2));
        // Check the random branch directly with several real items.
        let g = SharedRng::new(5);
        let p = bert(5, 1.0);
        let items = vec![7u32; 5000];
        let (masked, target) = p.mask_session(&items, 6 + 2, &mut *g.lock());
        let random: Vec<u32> = masked
            .iter()
            .copied()
            .filter(|&v| v != MASK_ID && v != 7)
            .collect();
        assert!(!random.is_empty());
        assert!(random.iter().all(|&v| (2..8).contains(&v)), "{random:?}");
        assert!(target.iter().all(|&t| t == 7));
    }

    #[test]
    fn bert4rec_train_keeps_last_l_and_draws_negatives() {
        let p = bert(3, 0.0);
        let s = [2u32, 3, 4, 5, 6];
        let w = [1f32, 2., 3., 4., 5.];
        let sampler = CountingSampler {
            k: 2,
            calls: Mutex::new(vec![]),
        };
        let b = p
            .collate_train(
                &[SessionRef {
                    items: &s,
                    weights: &w,
                }],
                7,
                Some(&sampler),
                &SharedRng::new(0),
                &Device::Cpu,
            )
            .expect("collate");
        // mask_prob 0: nothing masked, every target ignored.
        assert_eq!(u32s(&b.x), vec![vec![4, 5, 6]]);
        assert_eq!(u32s(&b.y), vec![vec![0, 0, 0]]);
        assert_eq!(f32s(&b.yw), vec![vec![3., 4., 5.]]);
        assert_eq!(b.negatives.expect("negatives").dims(), &[1, 3, 2]);
        assert_eq!(*sampler.calls.lock().expect("lock"), vec![(1, 3, 2, 7)]);
    }

    #[test]
    fn bert4rec_val_and_recommend_append_mask() {
        let p = bert(4, 0.15);
        let (s1, w1) = ([2u32, 3, 4], [0f32, 0., 1.]);
        let (s2, w2) = ([2u32, 3, 4, 5, 6, 7], [0f32, 0., 0., 0., 0., 3.]);
        let (s3, w3) = ([5u32], [2f32]);
        let b = p
            .collate_val(
                &[
                    SessionRef {
                        items: &s1,
                        weights: &w1,
                    },
                    SessionRef {
                        items: &s2,
                        weights: &w2,
                    },
                    SessionRef {
                        items: &s3,
                        weights: &w3,
                    },
                ],
                8,
                None,
                &SharedRng::new(0),
                &Device::Cpu,
            )
            .expect("collate");
        assert_eq!(
            u32s(&b.x),
            vec![vec![0, 2, 3, 1], vec![4, 5, 6, 1], vec![0, 0, 0, 1]]
        );
        assert_eq!(u32s(&b.y), vec![vec![4], vec![7], vec![5]]);
        assert_eq!(f32s(&b.yw), vec![vec![1.], vec![3.], vec![2.]]);

        let x = p
            .collate_recommend(&[&[2, 3], &[2, 3, 4, 5, 6], &[]], &Device::Cpu)
            .expect("recommend");
        assert_eq!(
            u32s(&x),
            vec![vec![0, 2, 3, 1], vec![4, 5, 6, 1], vec![0, 0, 0, 1]]
        );
    }

    #[test]
    fn registered_under_class_names_and_dotted_paths() {
        let reg = recblocks_core::Registry::from_inventory().expect("registry");
        for (name, alias) in [
            (
                SASREC,
                "rectools.models.nn.transformers.sasrec.SASRecDataPreparator",
            ),
            (
                BERT4REC,
                "rectools.models.nn.transformers.bert4rec.BERT4RecDataPreparator",
            ),
        ] {
            let r = reg.data_preparator(alias).expect("alias");
            assert_eq!(r.info.name, name);
        }
    }
}
