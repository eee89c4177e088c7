//! Checks of the kinds that are configuration rather than modules: presets, data preparators,
//! negative samplers, objectives, trainers (backbones and validation masks are skipped).

use recblocks_core::{registry::Registered, ComponentKind, Registry};

use super::{unknown_kwarg_outcome, with_unknown_kwarg};
use crate::{
    harness,
    report::{CheckResult, ConformanceError, Outcome},
};

pub(crate) fn run(
    registry: &Registry,
    kind: ComponentKind,
    reg: Registered,
) -> Result<Vec<CheckResult>, ConformanceError> {
    let h = harness::env(registry, 0.1)?;
    let defaults = (reg.info().default_kwargs)();
    let unknown = with_unknown_kwarg(&defaults);
    let (built, rejected) = match reg {
        Registered::ModelPreset(r) => {
            let preset = (r.build)();
            let missing: Vec<&str> = ["n_factors", "transformer_layers_type", "session_max_len"]
                .into_iter()
                .filter(|k| !preset.defaults.contains_key(*k))
                .collect();
            let outcome = if !missing.is_empty() {
                Outcome::Fail(format!("the preset's defaults lack {missing:?}"))
            } else if registry.trainer(preset.default_trainer).is_err() {
                Outcome::Fail(format!(
                    "the preset's default trainer `{}` is not registered",
                    preset.default_trainer
                ))
            } else {
                Outcome::Pass
            };
            return Ok(vec![CheckResult {
                check: "preset defaults name the model settings",
                outcome,
            }]);
        }
        Registered::DataPreparator(r) => (
            (r.build)(&h.spec, &defaults).map(|_| ()),
            unknown_kwarg_outcome((r.build)(&h.spec, &unknown)),
        ),
        Registered::NegativeSampler(r) => (
            (r.build)(&h.spec, &defaults).map(|_| ()),
            unknown_kwarg_outcome((r.build)(&h.spec, &unknown)),
        ),
        Registered::Objective(r) => (
            (r.build)(&h.spec, &h.schema, &defaults).map(|_| ()),
            unknown_kwarg_outcome((r.build)(&h.spec, &h.schema, &unknown)),
        ),
        Registered::Trainer(r) => (
            (r.build)(&h.spec, &defaults).map(|_| ()),
            unknown_kwarg_outcome((r.build)(&h.spec, &unknown)),
        ),
        _ => {
            let why = format!(
                "a {kind} needs a whole model or a dataset; covered by the host's integration tests"
            );
            return Ok(vec![CheckResult {
                check: "module checks",
                outcome: Outcome::Skipped(why),
            }]);
        }
    };
    Ok(vec![
        CheckResult {
            check: "builds with default kwargs",
            outcome: match built {
                Ok(()) => Outcome::Pass,
                Err(e) => Outcome::Fail(e.to_string()),
            },
        },
        CheckResult {
            check: "rejects an unknown kwarg",
            outcome: rejected,
        },
    ])
}
