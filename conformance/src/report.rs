//! What a conformance run reports.

use recblocks_core::{ComponentKind, CoreError};

/// The outcome of one check.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// The component passed.
    Pass,
    /// The component failed; says what was expected and what was found.
    Fail(String),
    /// The check does not apply; says why.
    Skipped(String),
}

/// One check's result.
#[derive(Debug, Clone)]
pub struct CheckResult {
    /// The check's name (`gradients reach every parameter`, ...).
    pub check: &'static str,
    /// Its outcome.
    pub outcome: Outcome,
}

/// Every check's result for one component.
#[derive(Debug, Clone)]
pub struct Report {
    /// The component's kind.
    pub kind: ComponentKind,
    /// Its canonical name.
    pub name: String,
    /// The crate that registered it.
    pub crate_name: String,
    /// One entry per check, in the order they ran.
    pub results: Vec<CheckResult>,
}

impl Report {
    /// The failed checks.
    pub fn failures(&self) -> Vec<&CheckResult> {
        self.results
            .iter()
            .filter(|r| matches!(r.outcome, Outcome::Fail(_)))
            .collect()
    }

    /// Whether every check passed or was skipped.
    pub fn passed(&self) -> bool {
        self.failures().is_empty()
    }

    /// `Ok` when every check passed or was skipped, else an error listing the failures.
    pub fn into_result(self) -> Result<Self, ConformanceError> {
        if self.passed() {
            return Ok(self);
        }
        let failures = self
            .failures()
            .iter()
            .map(|r| match &r.outcome {
                Outcome::Fail(why) => format!("check `{}` failed: {why}", r.check),
                _ => String::new(),
            })
            .collect::<Vec<_>>()
            .join("; ");
        Err(ConformanceError::Failed {
            kind: self.kind,
            name: self.name,
            failures,
        })
    }
}

/// Why a conformance run could not run, or failed.
#[derive(Debug, thiserror::Error)]
pub enum ConformanceError {
    /// The harness could not be set up (component not registered, standard components missing).
    #[error("conformance harness: {0}")]
    Setup(#[from] CoreError),
    /// Some checks failed.
    #[error("{kind} `{name}` fails conformance: {failures}")]
    Failed {
        /// The component's kind.
        kind: ComponentKind,
        /// Its name.
        name: String,
        /// Each failed check and why.
        failures: String,
    },
}
