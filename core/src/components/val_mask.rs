//! Validation mask functions (RecTools `get_val_mask_func`): choose validation interactions.

use serde_json::Value;

use crate::{context::SharedRng, Result};

/// The interactions a validation mask function looks at, in input row order.
#[derive(Debug, Clone, Copy)]
pub struct InteractionsView<'a> {
    /// Dense user index per row.
    pub users: &'a [u32],
    /// External id of each dense user index.
    pub user_external_ids: &'a [String],
    /// Timestamp per row (unix seconds).
    pub datetimes: &'a [i64],
}

/// Returns one flag per row: `true` marks a validation interaction.
pub type BuildValMask =
    fn(view: &InteractionsView<'_>, kwargs: &Value, rng: &SharedRng) -> Result<Vec<bool>>;
