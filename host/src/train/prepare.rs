//! Training data preparation, as RecTools' `TransformerDataPreparatorBase.process_dataset_train`
//! (docs/rectools.md §2.6):
//! 1. the validation mask function (if any) marks validation rows, which leave the training rows;
//! 2. users with fewer than `train_min_user_interactions` training rows are dropped;
//! 3. rows are stably sorted by datetime and each user keeps the last
//!    `session_max_len + train_session_max_len_addition` rows;
//! 4. the item id map is the preparator's extra tokens (PAD, MASK) then items in order of first
//!    appearance in that frame; users likewise;
//! 5. validation sessions: a user's kept training rows with weight 0, then their validation rows
//!    (restricted to known users and items) with their weights.

use std::collections::HashMap;

use recblocks_core::{
    components::{val_mask::BuildValMask, DataPreparator, InteractionsView},
    ModelSpec, SharedRng,
};
use serde_json::Value;

use crate::{data::Interactions, error::HostError, Result};

/// One user's session (internal item ids, oldest first).
#[derive(Debug, Clone, PartialEq)]
pub struct Session {
    /// Internal item ids.
    pub items: Vec<u32>,
    /// Weights.
    pub weights: Vec<f32>,
}

/// Sessions and id maps ready for training.
#[derive(Debug, Clone)]
pub struct PreparedData {
    /// Internal item id → external id (extra tokens first, as `"PAD"`, `"MASK"`).
    pub item_ids: Vec<String>,
    /// Number of extra tokens at the start of `item_ids`.
    pub n_extra_tokens: usize,
    /// Training users (external ids), in the order of `sessions`.
    pub user_ids: Vec<String>,
    /// Training sessions.
    pub sessions: Vec<Session>,
    /// Validation sessions (inputs with weight 0, then the target), possibly empty.
    pub val_sessions: Vec<Session>,
    /// Users dropped by `train_min_user_interactions`.
    pub n_dropped_users: usize,
}

impl PreparedData {
    /// External id → internal id of every item (extra tokens excluded).
    pub fn item_index(&self) -> HashMap<String, u32> {
        self.item_ids
            .iter()
            .enumerate()
            .skip(self.n_extra_tokens)
            .map(|(i, id)| (id.clone(), i as u32))
            .collect()
    }
}

/// A validation mask function with its kwargs.
pub struct ValMask<'a> {
    /// The function.
    pub func: BuildValMask,
    /// Its kwargs.
    pub kwargs: &'a Value,
}

/// Prepares `interactions` for training `spec` with `preparator`.
pub fn prepare(
    interactions: &Interactions,
    spec: &ModelSpec,
    preparator: &dyn DataPreparator,
    val_mask: Option<ValMask<'_>>,
    rng: &SharedRng,
) -> Result<PreparedData> {
    let n = interactions.len();
    let is_val = match val_mask {
        Some(vm) => {
            let view = InteractionsView {
                users: &interactions.users,
                user_external_ids: &interactions.user_ids,
                datetimes: &interactions.datetimes,
            };
            let mask = (vm.func)(&view, vm.kwargs, rng)?;
            if mask.len() != n {
                return Err(HostError::Other(format!(
                    "the validation mask function returned {} flags for {n} rows",
                    mask.len()
                )));
            }
            mask
        }
        None => vec![false; n],
    };

    // 2. Filter users by their number of training rows.
    let mut counts = vec![0usize; interactions.n_users()];
    for row in 0..n {
        if !is_val[row] {
            counts[interactions.users[row] as usize] += 1;
        }
    }
    let min = spec.train_min_user_interactions;
    let n_dropped_users = counts.iter().filter(|&&c| c > 0 && c < min).count();
    let mut rows: Vec<usize> = (0..n)
        .filter(|&r| !is_val[r] && counts[interactions.users[r] as usize] >= min)
        .collect();
    if rows.is_empty() {
        return Err(HostError::TrainingData(format!(
            "no user has at least train_min_user_interactions = {min} training interactions \
             ({n} rows in all)"
        )));
    }

    // 3. Stable sort by datetime; keep each user's last rows.
    rows.sort_by_key(|&r| interactions.datetimes[r]);
    let keep = spec.session_max_len + preparator.train_session_max_len_addition();
    let mut remaining = counts.clone();
    let rows: Vec<usize> = rows
        .into_iter()
        .filter(|&r| {
            let u = interactions.users[r] as usize;
            let left = remaining[u];
            remaining[u] -= 1;
            left <= keep
        })
        .collect();

    // 4. Id maps in order of first appearance.
    let extra = preparator.item_extra_tokens();
    let n_extra = extra.len();
    let mut item_internal: HashMap<u32, u32> = HashMap::new();
    let mut item_ids: Vec<String> = extra;
    let mut user_slot: HashMap<u32, usize> = HashMap::new();
    let mut user_ids = Vec::new();
    let mut sessions: Vec<Session> = Vec::new();
    for &r in &rows {
        let item = interactions.items[r];
        let internal = *item_internal.entry(item).or_insert_with(|| {
            item_ids.push(interactions.item_ids[item as usize].clone());
            (item_ids.len() - 1) as u32
        });
        let user = interactions.users[r];
        let slot = *user_slot.entry(user).or_insert_with(|| {
            user_ids.push(interactions.user_ids[user as usize].clone());
            sessions.push(Session {
                items: Vec::new(),
                weights: Vec::new(),
            });
            sessions.len() - 1
        });
        sessions[slot].items.push(internal);
        sessions[slot].weights.push(interactions.weights[r]);
    }

    // 5. Validation sessions.
    let mut val_rows: Vec<usize> = (0..n)
        .filter(|&r| {
            is_val[r]
                && user_slot.contains_key(&interactions.users[r])
                && item_internal.contains_key(&interactions.items[r])
        })
        .collect();
    val_rows.sort_by_key(|&r| interactions.datetimes[r]);
    let mut val_slot: HashMap<usize, usize> = HashMap::new();
    let mut val_sessions: Vec<Session> = Vec::new();
    for &r in &val_rows {
        let slot = user_slot[&interactions.users[r]];
        let vs = *val_slot.entry(slot).or_insert_with(|| {
            let train = &sessions[slot];
            val_sessions.push(Session {
                items: train.items.clone(),
                weights: vec![0.0; train.items.len()],
            });
            val_sessions.len() - 1
        });
        val_sessions[vs]
            .items
            .push(item_internal[&interactions.items[r]]);
        val_sessions[vs].weights.push(interactions.weights[r]);
    }

    Ok(PreparedData {
        item_ids,
        n_extra_tokens: n_extra,
        user_ids,
        sessions,
        val_sessions,
        n_dropped_users,
    })
}
