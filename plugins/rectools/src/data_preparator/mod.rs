//! Data preparators: ports the collate functions of RecTools' `SASRecDataPreparator`
//! (`rectools/models/nn/transformers/sasrec.py`) and `BERT4RecDataPreparator` (`bert4rec.py`),
//! with the kwargs of `TransformerDataPreparatorBase` (`data_preparator.py`); docs/rectools.md §1.2 and
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

mod bert4rec;
mod sasrec;

use rand::Rng;
use recblocks_core::{
    batch::Batch,
    candle::{Device, Tensor},
    components::{DataPreparator, NegativeSampler, SessionRef},
    context::SharedRng,
    error::CoreError,
    kind::ComponentKind,
    kwargs::decode_kwargs,
    serde_json::Value,
    spec::ModelSpec,
    Result,
};
use serde::{Deserialize, Serialize};

pub use bert4rec::BERT4RecDataPreparator;
pub use sasrec::SASRecDataPreparator;

/// Internal id of the PAD token.
pub const PAD_ID: u32 = 0;
/// Internal id of the MASK token (BERT4Rec only).
pub const MASK_ID: u32 = 1;
/// RecTools' default `mask_prob` (used when the spec has none).
pub const DEFAULT_MASK_PROB: f64 = 0.15;

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

/// What a collate needs besides the sessions: the preparator, the catalog, the negative sampler,
/// the random stream and the device.
#[derive(Clone, Copy)]
struct CollateContext<'a> {
    /// The preparator's name, for errors.
    component: &'a str,
    /// Item ids in the catalog (extra tokens included).
    n_items: usize,
    /// Extra tokens (PAD, MASK) at the start of the id range: never drawn as negatives.
    n_extra: usize,
    /// Draws negatives for sampled losses; `None` draws none.
    sampler: Option<&'a dyn NegativeSampler>,
    rng: &'a SharedRng,
    device: &'a Device,
}

impl CollateContext<'_> {
    /// Draws negatives `[b, seq_len, K]` with ids in `[n_extra, n_items)` when a sampler is given.
    fn draw_negatives(&self, b: usize, seq_len: usize) -> Result<Option<Tensor>> {
        let (component, n_extra, n_items) = (self.component, self.n_extra, self.n_items);
        let Some(sampler) = self.sampler else {
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
        let negs = sampler.sample(b, seq_len, n_extra as u32, n_items as u32, self.rng);
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
        Ok(Some(Tensor::from_vec(negs, (b, seq_len, k), self.device)?))
    }
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
fn collate_val_common(
    ctx: &CollateContext<'_>,
    l: usize,
    append_mask: bool,
    sessions: &[SessionRef<'_>],
) -> Result<Batch> {
    let (component, n_items) = (ctx.component, ctx.n_items);
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
    let (x, y, yw) = tensors(x, y, yw, b, l, 1, ctx.device)?;
    let negatives = ctx.draw_negatives(b, 1)?;
    Ok(Batch {
        x,
        y,
        yw,
        negatives,
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
pub(crate) mod test_support {
    //! Helpers shared by the preparators' tests.

    use std::sync::Mutex;

    use recblocks_core::serde_json::{json, Map};

    use super::*;

    pub(crate) fn spec(base: Map<String, Value>, overrides: Value) -> ModelSpec {
        let mut m = base;
        if let Value::Object(o) = overrides {
            m.extend(o);
        }
        serde_json::from_value(Value::Object(m)).expect("spec")
    }

    pub(crate) fn sasrec(l: usize) -> SASRecDataPreparator {
        let s = spec(
            crate::presets::sasrec_defaults(),
            json!({"session_max_len": l}),
        );
        SASRecDataPreparator::from_spec(&s, &Value::Null).expect("build")
    }

    pub(crate) fn bert(l: usize, mask_prob: f64) -> BERT4RecDataPreparator {
        let s = spec(
            crate::presets::bert4rec_defaults(),
            json!({"session_max_len": l, "mask_prob": mask_prob}),
        );
        BERT4RecDataPreparator::from_spec(&s, &Value::Null).expect("build")
    }

    pub(crate) fn u32s(t: &Tensor) -> Vec<Vec<u32>> {
        t.to_vec2::<u32>().expect("u32 2d")
    }

    pub(crate) fn f32s(t: &Tensor) -> Vec<Vec<f32>> {
        t.to_vec2::<f32>().expect("f32 2d")
    }

    /// Returns `lowest, lowest+1, ...` cyclically and records its arguments.
    pub(crate) struct CountingSampler {
        pub(crate) k: usize,
        pub(crate) calls: Mutex<Vec<(usize, usize, u32, u32)>>,
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
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use recblocks_core::kwargs::default_kwargs_json;
    use recblocks_core::serde_json::json;

    use super::{bert4rec::BERT4REC, sasrec::SASREC, test_support::*, *};

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
