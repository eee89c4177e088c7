//! The default trainer factory: recblocks' stand-in for RecTools' `get_trainer_func`
//! (docs/rectools.md §1.2).
//!
//! RecTools builds `Trainer(max_epochs=epochs, min_epochs=epochs, deterministic, ...)` when no
//! `get_trainer_func` is given, and otherwise calls the user's Python function with
//! `get_trainer_func_kwargs`. recblocks cannot run Python, so `default_trainer` reads those kwargs
//! itself and turns them into [`TrainerSettings`]: the epoch count (default: the spec's `epochs`),
//! the seed (default: the spec's `seed`, else 42), optional early stopping on a validation value
//! (Lightning's `EarlyStopping` callback, as RecTools' advanced training guide configures it), and
//! the k of the validation Recall/NDCG reported per epoch.

use recblocks_core::{
    components::{trainer::EarlyStopping, TrainerSettings},
    error::CoreError,
    kind::ComponentKind,
    kwargs::decode_kwargs,
    serde_json::Value,
    spec::ModelSpec,
    Result,
};
use serde::{Deserialize, Serialize};

pub(crate) const NAME: &str = "default_trainer";

/// Kwargs of `default_trainer` (`get_trainer_func_kwargs`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TrainerKwargs {
    /// Number of epochs; `null` uses the spec's `epochs`.
    pub max_epochs: Option<usize>,
    /// Seed of every random stream; `null` uses the spec's `seed` (default 42).
    pub seed: Option<u64>,
    /// Early stopping; `null` trains for exactly the number of epochs, as RecTools' default trainer.
    pub early_stopping: Option<EarlyStoppingKwargs>,
    /// k of the validation Recall@k / NDCG@k reported per epoch (default 10).
    pub val_k: usize,
}

impl Default for TrainerKwargs {
    fn default() -> Self {
        TrainerKwargs {
            max_epochs: None,
            seed: None,
            early_stopping: None,
            val_k: 10,
        }
    }
}

/// The `early_stopping` object.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EarlyStoppingKwargs {
    /// `val_loss` (lower is better), `recall@K` or `ndcg@K` (higher is better), K = `val_k`.
    pub monitor: String,
    /// Epochs without improvement before stopping (default 3).
    #[serde(default = "default_patience")]
    pub patience: usize,
    /// Smallest change that counts as an improvement (default 0.0).
    #[serde(default)]
    pub min_delta: f64,
}

fn default_patience() -> usize {
    3
}

fn bad(message: String) -> CoreError {
    CoreError::BadKwargs {
        kind: ComponentKind::Trainer,
        component: NAME.into(),
        message,
    }
}

/// Checks a monitor name against `val_k` and returns it normalised (lower case).
fn check_monitor(monitor: &str, val_k: usize) -> Result<String> {
    let m = monitor.trim().to_ascii_lowercase();
    if m == "val_loss" {
        return Ok(m);
    }
    let expected = || {
        format!(
            "`early_stopping.monitor` must be \"val_loss\", \"recall@{val_k}\" or \
             \"ndcg@{val_k}\" (k = val_k); found \"{monitor}\""
        )
    };
    let Some((metric, k)) = m.split_once('@') else {
        return Err(bad(expected()));
    };
    if metric != "recall" && metric != "ndcg" {
        return Err(bad(expected()));
    }
    match k.parse::<usize>() {
        Ok(k) if k == val_k => Ok(m),
        Ok(k) if k > 0 => Err(bad(format!(
            "`early_stopping.monitor` \"{monitor}\" uses k = {k}, but validation metrics are \
             computed at val_k = {val_k}: set \"val_k\": {k}"
        ))),
        _ => Err(bad(expected())),
    }
}

/// Builds trainer settings from the spec and `get_trainer_func_kwargs`.
pub fn default_trainer(spec: &ModelSpec, kwargs: &Value) -> Result<TrainerSettings> {
    let kw: TrainerKwargs = decode_kwargs(ComponentKind::Trainer, NAME, kwargs)?;
    if kw.val_k == 0 {
        return Err(bad("`val_k` must be at least 1".into()));
    }
    let early_stopping = match kw.early_stopping {
        None => None,
        Some(es) => {
            if spec.get_val_mask_func.is_none() {
                return Err(bad(
                    "`early_stopping` monitors a validation value, but the spec has no \
                     validation: set `get_val_mask_func` (e.g. \"leave_one_out_mask\")"
                        .into(),
                ));
            }
            if !(es.min_delta.is_finite() && es.min_delta >= 0.0) {
                return Err(bad(format!(
                    "`early_stopping.min_delta` must be finite and >= 0, found {}",
                    es.min_delta
                )));
            }
            Some(EarlyStopping {
                monitor: check_monitor(&es.monitor, kw.val_k)?,
                patience: es.patience,
                min_delta: es.min_delta,
            })
        }
    };
    Ok(TrainerSettings {
        epochs: kw.max_epochs.unwrap_or(spec.epochs),
        seed: kw.seed.unwrap_or_else(|| spec.seed_or_default()),
        early_stopping,
        val_k: kw.val_k,
    })
}

recblocks_core::register! {
    TrainerRegistration {
        name: NAME,
        summary: "recblocks' built-in trainer: epochs, seed, optional early stopping and val_k (RecTools' get_trainer_func names a user's Python function, which recblocks cannot run)",
        kwargs: TrainerKwargs,
        build: default_trainer,
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use recblocks_core::kwargs::default_kwargs_json;
    use recblocks_core::serde_json::{json, Map};

    use super::*;

    fn spec(overrides: Value) -> ModelSpec {
        let mut m: Map<String, Value> = crate::presets::sasrec_defaults();
        if let Value::Object(o) = overrides {
            m.extend(o);
        }
        serde_json::from_value(Value::Object(m)).expect("spec")
    }

    #[test]
    fn defaults_follow_the_spec() {
        let s = spec(json!({"epochs": 7}));
        let t = default_trainer(&s, &Value::Null).expect("settings");
        assert_eq!(
            t,
            TrainerSettings {
                epochs: 7,
                seed: 42,
                early_stopping: None,
                val_k: 10
            }
        );
        let s = spec(json!({"epochs": 7, "seed": 5}));
        assert_eq!(default_trainer(&s, &json!({})).expect("settings").seed, 5);
        assert_eq!(
            default_kwargs_json::<TrainerKwargs>(),
            json!({"max_epochs": null, "seed": null, "early_stopping": null, "val_k": 10})
        );
    }

    #[test]
    fn overrides_and_early_stopping() {
        let s = spec(json!({"epochs": 7, "seed": 5, "get_val_mask_func": "leave_one_out_mask"}));
        let t = default_trainer(
            &s,
            &json!({"max_epochs": 20, "seed": 9, "val_k": 5,
                    "early_stopping": {"monitor": "NDCG@5", "patience": 2, "min_delta": 0.001}}),
        )
        .expect("settings");
        assert_eq!(
            t,
            TrainerSettings {
                epochs: 20,
                seed: 9,
                early_stopping: Some(EarlyStopping {
                    monitor: "ndcg@5".into(),
                    patience: 2,
                    min_delta: 0.001
                }),
                val_k: 5
            }
        );
        let t = default_trainer(&s, &json!({"early_stopping": {"monitor": "val_loss"}}))
            .expect("settings");
        assert_eq!(
            t.early_stopping,
            Some(EarlyStopping {
                monitor: "val_loss".into(),
                patience: 3,
                min_delta: 0.0
            })
        );
        let t = default_trainer(&s, &json!({"early_stopping": {"monitor": "recall@10"}}))
            .expect("settings");
        assert_eq!(
            t.early_stopping.map(|e| e.monitor).as_deref(),
            Some("recall@10")
        );
    }

    #[test]
    fn rejections() {
        let with_val = spec(json!({"get_val_mask_func": "leave_one_out_mask"}));
        for (kw, needle) in [
            (
                json!({"early_stopping": {"monitor": "recall@5"}}),
                "set \"val_k\": 5",
            ),
            (
                json!({"early_stopping": {"monitor": "map@10"}}),
                "must be \"val_loss\"",
            ),
            (
                json!({"early_stopping": {"monitor": "recall@x"}}),
                "must be \"val_loss\"",
            ),
            (
                json!({"early_stopping": {"monitor": "val_loss", "min_delta": -1.0}}),
                "min_delta",
            ),
            (json!({"early_stopping": {"patience": 2}}), "monitor"),
            (
                json!({"early_stopping": {"monitor": "val_loss", "mode": "min"}}),
                "mode",
            ),
            (json!({"val_k": 0}), "val_k"),
            (json!({"max_epoch": 3}), "max_epoch"),
        ] {
            let err = default_trainer(&with_val, &kw).expect_err("bad kwargs");
            assert!(err.to_string().contains(needle), "{kw}: {err}");
        }
        let err = default_trainer(
            &spec(json!({})),
            &json!({"early_stopping": {"monitor": "val_loss"}}),
        )
        .expect_err("no validation");
        assert!(err.to_string().contains("get_val_mask_func"), "{err}");
    }

    #[test]
    fn registered() {
        let reg = recblocks_core::Registry::from_inventory().expect("registry");
        assert_eq!(reg.trainer(NAME).expect("trainer").info.name, NAME);
    }
}
